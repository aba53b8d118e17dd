"""The First Order Motion Model (Avatarify's generator) from the user's own checkpoint."""
