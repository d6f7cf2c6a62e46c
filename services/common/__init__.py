"""What every service shares: config, logging, metrics, and the server bootstrap."""
