"""medsft."""
