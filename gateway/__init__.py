"""citysense gateway agent."""
