"""One module per stage; each exposes one `run_*(config) -> Path` function."""
