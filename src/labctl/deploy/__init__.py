"""Deployments: the journal of revisions and steps, and the controller that swaps them."""
