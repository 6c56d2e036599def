application = "not a function"
