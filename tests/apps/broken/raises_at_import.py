raise RuntimeError("the app refuses to start")
