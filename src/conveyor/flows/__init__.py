"""Flow runtime: sources feeding payloads through delivery into targets."""
