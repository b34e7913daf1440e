"""The training engine. Importing it is cheap: heavy libraries load where they are used."""
