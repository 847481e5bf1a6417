"""autopilot-batch: bulk-update Windows Autopilot events in Intune through Microsoft Graph."""

__version__ = "0.1.0"

__all__ = ["__version__"]
