"""Model zoo: importing this package registers every kanvision model with timm."""
