"""DTensor cases."""
