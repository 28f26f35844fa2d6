"""Starting commands in running sandboxes: zygotes, the fork server, exec sessions."""
