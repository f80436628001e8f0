"""Request (RED) metrics computed from every built span before sampling."""
