"""labctl report: the lab's report, public or private."""
