"""hutch inside agent frameworks: each module is a framework's own provider interface
(inspect_ai's sandbox environment, the OpenAI Agents SDK's sandbox client, smolagents'
executor, LangChain's sandbox backend), built on the SDK as any user of it would be, and
found through the framework's entry point.

Why a package of its own, beside :mod:`hutch.sdk` and :mod:`hutch.tools`: each module
imports its framework, which ``import hutch`` must never do (the frameworks are optional
extras: ``pip install "hutch[inspect]"``), and none is part of the Modal-compatible
surface.  Dependency direction: ``integrations -> sdk -> api``; nothing imports this
package but the frameworks, through their entry points.
"""
