"""The RewardModel kind (Bradley-Terry): :mod:`objective` (the ``reward`` stage) and :mod:`pairs`
(preference pairs from files or the feedback app's store)."""
