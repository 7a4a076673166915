"""`pipeline serve`: Molmo2 behind an authenticated HTTP endpoint on Ray Serve (`app`), its guards (`security`), fetching (`fetch`) and settings (`settings`)."""
