"""The training loop (:mod:`trainer`), the interface it trains objectives through
(:mod:`objective`) and how a run starts (:mod:`launcher`: here, or torchrun on itself)."""
