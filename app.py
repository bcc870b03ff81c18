"""The Hugging Face Space's entry point: the app `lab app` serves, with the same options (`python app.py --help`)."""

from plw_lab.app.main import main

if __name__ == "__main__":
    main()
