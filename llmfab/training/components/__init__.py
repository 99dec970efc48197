"""What the training loops are composed of, one concern per module (torchtitan's components).

Each takes the part of the spec it uses (``BatchSpec``, ``CheckpointSpec``, ``OptimizerSpec``,
``MonitoringSpec``, the precision and parallelism fields), so a RewardModel's or an RL run's loop
builds from the same parts as pretraining.
"""
