"""The field technician's tool: checks at the pole before a box joins the fleet."""
