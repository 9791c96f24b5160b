"""Check JAX derivatives against finite differences, and say exactly where they are wrong."""
