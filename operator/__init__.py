"""The SBSDeployment operator (kopf): reconciles each SBSDeployment into engine groups and its
scheduler, keeps status, recovers, rolls updates and scales (`autoscaling`)."""
