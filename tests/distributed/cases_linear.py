"""linear cases."""
