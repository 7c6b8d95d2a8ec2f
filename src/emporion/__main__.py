from emporion.cli.main import app

app()
