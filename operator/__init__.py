"""SBSDeployment operator (kopf). Not yet implemented: see the operator issue."""
