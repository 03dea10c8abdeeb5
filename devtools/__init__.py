"""Developer tools beside the product: synthetic dashboard data and the docs screenshots (top layer)."""
