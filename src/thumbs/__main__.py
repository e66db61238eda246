from thumbs.cli import app

app()
