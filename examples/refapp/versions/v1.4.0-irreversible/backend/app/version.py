"""The release this source tree is: the git tag it is published under."""

VERSION = "v1.4.0-irreversible"
