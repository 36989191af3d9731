/* greet: prints a greeting made by libgreet for each name given. */
#include <stdio.h>
#include <string.h>

#include <greet.h>

#define PROGRAM_VERSION "1.1"

static int greet_one(const char *name)
{
	char buf[256];

	if (greet_format(buf, sizeof buf, name) < 0) {
		fputs("greet: cannot format greeting\n", stderr);
		return 1;
	}
	puts(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int i, status = 0;

	if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
		printf("greet %s (libgreet %s)\n", PROGRAM_VERSION, greet_version());
		return 0;
	}
	if (argc < 2)
		return greet_one(NULL);
	for (i = 1; i < argc; i++)
		status |= greet_one(argv[i]);
	return status;
}
