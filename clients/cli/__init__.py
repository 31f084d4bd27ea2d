"""The `easel` command-line client: typer commands over the SDK, rich tables and bars."""
