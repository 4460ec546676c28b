"""killswitch: an event-driven risk kill-switch daemon for Binance, MEXC and BingX spot."""

__version__ = "0.1.0"
