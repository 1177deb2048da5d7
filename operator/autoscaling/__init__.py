"""Autoscaling: per-role `/scale` targets (`role_scaler_api`, `role_scalers`) and the cluster-wide
`SBSAutoscalingPolicy` (`policy_api`): pure decisions from the scheduler's metrics (`decision`),
sizing ahead of load in the simulator (`prediction`), and the controller that applies them
(`controller`)."""
