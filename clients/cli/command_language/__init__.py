"""The node command language of `easel gen`: each command adds a node (an invocation) to
a session, its options are the node's inputs, `|` links each command to the one before.

`syntax` splits a line into commands and options, `commands` builds the commands from the
invoker's node types, `plan` turns a line into nodes and links, `runner` adds and runs
them, `repl` is the interactive prompt, `help` and `preview` what they say.
"""
