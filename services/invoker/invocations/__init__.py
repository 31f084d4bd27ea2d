"""The node types the invoker runs (invocations), their schemas and their registry.

Every module of this package is imported at start-up and every invocation class in it is
registered; custom node types come from `.py` files in the `custom_nodes_dir` folder and
are written the same way, e.g. `<root>/nodes/shout.py`:

    class ShoutOutput(BaseOutput):
        output_type: ClassVar[str] = "shout_output"
        text: str = OutputField(description="The loud text.")

    class ShoutInvocation(BaseInvocation):
        \"\"\"Upper-cases a text.\"\"\"

        invocation_type: ClassVar[str] = "shout"
        text: str = InputField("", description="What to shout.")

        async def invoke(self, context: InvocationContext) -> ShoutOutput:
            return ShoutOutput(text=self.text.upper())

(imports from `services.invoker.invocations.base` and `.context`). Nothing here imports
torch: nodes that denoise ask the inference service by name.
"""
