"""The admin listener: the JSON API under /api/ and its Host/Origin guard."""
