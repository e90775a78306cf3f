module keel.invalid/keel

go 1.19
