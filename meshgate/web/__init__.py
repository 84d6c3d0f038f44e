"""The web app: sign-up and log-in, chat, API keys, usage and admin pages (Starlette + Jinja2).

`server.App` hands it every path outside the API (`create_web_app` in `app.py`); the API's
own paths never reach it.
"""
