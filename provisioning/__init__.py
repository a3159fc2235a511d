"""citysense-provision: the field technician's CLI (flash, deploy, enroll, verify, revoke)."""

__all__ = ["__version__"]
__version__ = "0.1.0"
