from birnn_export.cli import run

run()
