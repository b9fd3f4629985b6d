"""deqbench."""
