from flows.cli.main import app

app(prog_name="tilewise")
