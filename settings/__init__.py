"""Pure settings models and shape facts below every other layer: the core's and the service's
settings (which the operator writes and the service reads) and engine shape constants."""
