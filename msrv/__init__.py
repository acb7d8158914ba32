"""msrv: the management server daemon."""
