#include <stdio.h>

#include "greet.h"

const char *greet_version(void)
{
	return GREET_VERSION;
}

int greet_format(char *buf, size_t size, const char *name)
{
	if (name == NULL || name[0] == '\0')
		name = "world";
	return snprintf(buf, size, "Hello, %s!", name);
}
