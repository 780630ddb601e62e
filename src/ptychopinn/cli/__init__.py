"""Command-line interface: one module per subcommand; each parses, builds config, calls one
library function."""
