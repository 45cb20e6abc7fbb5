/*
 * version.h - the one place the release number is written (besides
 * peft.control's default_version, which the Makefile checks against it):
 * the SQL layer and the engine both report it.
 */
#ifndef PEFT_VERSION_H
#define PEFT_VERSION_H

#define PEFT_VERSION "0.3.0"

#endif
