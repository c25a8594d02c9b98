"""labctl export: the lab run by systemd or Kubernetes."""
