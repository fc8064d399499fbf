"""The throwaway server of the recipe test: its name and port (importing this registers nothing)."""
RECIPE_NAME = "recipe-floor"
RECIPE_PORT = 8099
