from birnn_export.cli import run

if __name__ == "__main__":  # engines started in child processes import this module too
    run()
