"""One router per resource: profiles, predict, segments, health."""
