"""labctl bench: a load generator whose numbers can be trusted."""
