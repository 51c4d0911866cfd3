"""The dashboard's pages, one module per area; each is a thin router over that area's services."""
